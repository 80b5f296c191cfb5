"""Talking to Klaviyo: request values (``requests``), outcomes, the client, rate limiting,
retries, bulk jobs. Import the submodule you need; the package itself exports nothing, so
importing the request value types (as handlers do) does not load the HTTP stack."""
