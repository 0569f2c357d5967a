"""Task families: what to train (data, backbone, routed forward, loss) and how to use the result.

* :mod:`.base`: :class:`~.base.TrainTask`, the routed pass schedules (paired / sequential / off);
* :mod:`.nlg`: causal-LM data-to-text (E2E, WebNLG, DART);
* :mod:`.nlu`: GLUE classification / regression and LM-BFF prompt-based few-shot.

Pure torch: the DeepSpeed loop that runs a task lives in ``adamix_ds.training``.
"""
