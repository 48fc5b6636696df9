"""Where budgetplan meets training frameworks and people: the pipeline's last room, above everything else
of the library.

* :mod:`budgetplan.integrations.lightning` — ``BudgetCallback`` for Lightning 2.x (the ``lightning`` extra);
* :mod:`budgetplan.integrations.distributed` — plain ``DistributedDataParallel``: the reducer rebuilt after a
  re-selection (``reselect_ddp``);
* :mod:`budgetplan.integrations.progress` — logging through rich, solves as spinners (the CLI's
  ``--quiet``/``--verbose`` use it; the CLI imports nothing else of this room).
"""
