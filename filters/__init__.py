"""Pure filter logic: what the local node's clients are served. No I/O, no asyncio, no logging.

``api``: the contract every filter implements, and the data it trades with the cache;
``pipeline``: the registered filters and the only calls the cache makes;
``topology`` and ``keys``: the topology filter (its rules, and its annotations).
"""
