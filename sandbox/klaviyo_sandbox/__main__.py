"""``python -m klaviyo_sandbox [OPTIONS]``: serve the Klaviyo stand-in (``--help`` lists them)."""

from klaviyo_sandbox.cli import sandbox

if __name__ == "__main__":
    sandbox(prog_name="python -m klaviyo_sandbox")
