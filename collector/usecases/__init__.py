"""Use cases: what each command does, as plain functions over (runtime, arguments).

Each module is one command (or a family of them): it takes a ``runtime.Runtime`` and the
command's arguments, uses the store, the sources and the pure domain, and returns values
(or writes a document to the stream it is given). The CLI parses, calls one, prints.
"""
