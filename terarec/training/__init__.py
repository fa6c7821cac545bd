"""Training: the step engine, the ``fit`` loop with HugeCTR's log lines, callbacks."""
