"""The engine's pricing: ``frame.VectorPricer`` prices job frames with a rate card
(docs/design/engine.md §7). ``billing.price`` stays the statement of the rules."""
