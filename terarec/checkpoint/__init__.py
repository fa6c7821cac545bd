"""Model files in HugeCTR's layouts (``_dense_N.model``, ``{i}_sparse_N.model/``), written atomically."""
