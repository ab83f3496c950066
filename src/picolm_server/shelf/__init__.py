"""The model shelf: it holds the server's models and picks one per request.

:mod:`.residency` owns which models are in memory: loading on first use (one load per
model however many requests wait for it), unloading after ``keep_alive``, and keeping the
loaded models within a memory budget.
"""
