"""The search: where a gate is created (``gates``), applied (``supernet``), costed (``cost``, or the device's
``latency`` table), decided (``budget``) and folded (``fold``), and where its logits start (``priors``); the
``pruner`` steers them in any training loop, ``hooks`` run it inside the shared one, and ``landing`` times a
latency budget's result until it reads on target.

Reach the modules with ``from dnas_prune.search.supernet import Supernet``: ``dnas_prune.search`` itself is the
search stage's function.
"""
