def __getattr__(name: str) -> object:  # tally.Client, imported only when asked for
    if name == "Client":
        from tally.service.client import Client

        return Client
    raise AttributeError(f"module 'tally' has no attribute {name!r}")
