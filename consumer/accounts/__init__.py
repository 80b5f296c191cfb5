"""Several Klaviyo accounts in one relay: their settings (``config``), which account an event
goes to (``routing``), and the delivery that sends each event with its account's stack
(``router``), and each account's in-flight window (``window``)."""
