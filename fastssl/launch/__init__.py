"""Launchers: files that start a training run on a scheduler (`fastssl launch <scheduler>`), one module each."""
