"""The model shelf: the models a server can serve, picked by name per request, loaded
on demand and unloaded when idle, within a memory budget. :mod:`.catalog` lists them
from the settings."""
