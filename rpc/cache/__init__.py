"""The result cache: ``@rpc(idempotent=True, cache=60)`` on Memcached.

policy.py says what a method declares, keys.py how its entries are named,
backend.py and memcached.py where they live, middleware.py how a worker uses them,
invalidation.py how they are dropped, commands.py the ``rpc cache`` commands and
servers.py the Memcached processes themselves. Nothing here is imported by a
worker whose services cache nothing, beyond the policy and the key rules.
"""
