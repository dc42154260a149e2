"""The search: where a gate is created (``gates``), applied (``supernet``), costed (``cost``), decided
(``budget``) and folded (``fold``); the ``pruner`` steers them in any training loop, and ``hooks`` run it inside
the shared one.

Reach the modules with ``from dnas_prune.search.supernet import Supernet``: ``dnas_prune.search`` itself is the
search stage's function.
"""
