"""The HugeCTR-compatible facade: ``CreateSolver``, ``DataReaderParams``, ``Model`` ...

Translates HugeCTR's argument names into terarec's typed configs; the core never imports it.
"""
