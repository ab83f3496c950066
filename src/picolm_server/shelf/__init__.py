"""The model shelf: the models a server can serve, picked by name per request, loaded
on demand and unloaded when idle, within a memory budget.

:mod:`.catalog` lists the models from the settings (with :mod:`.engine_choice`,
:mod:`.model_file`, :mod:`.estimate` and :mod:`.models_dir`); :mod:`.budget` sizes the
memory budget; :mod:`.residency` owns which models are in memory: loading on first use
(one load per model however many requests wait for it), unloading after ``keep_alive``,
and keeping the loaded models within the budget.
"""
