"""The result cache: ``@rpc(idempotent=True, cache=60)`` on Memcached.

policy.py says what a method declares, keys.py how its entries are named,
backend.py and memcached.py where they live, middleware.py how a worker uses them,
invalidation.py how they are dropped, stats.py what is counted, commands.py the
``rpc cache`` commands and servers.py the Memcached processes themselves.
pymemcache is imported only once ``cache_servers`` are configured.
"""
