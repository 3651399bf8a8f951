"""Calls to the providers: everything between a service and a plugin's upstream API.

``market_service`` is the one way in (the shared plugin instances and users' own); every call
passes ``calls``: the ``gate`` (the ``breaker``'s admission and the ``budget``'s slot in one
script), metrics and retries. ``circuit`` is the breaker's state machine in process memory,
``deadline`` the request's deadline for provider waits, ``credentials`` users' own exchange keys,
``tickers`` the tickers answered stale while the provider fails.
"""
