"""The task every method is given: each image its own class, its views the support and query sets,
with the meta-learning tricks (task rotation, query mixing) applied on the device after loading.

layout: the row layout, query mixing's partners, the global layout under torchrun; rotation and
query_mix: the tricks' draws and pixel work; builder: a loaded batch -> the task.
"""
