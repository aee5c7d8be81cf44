"""Use cases: what a command or a route does, as plain functions over the store and billing."""
