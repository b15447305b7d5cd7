"""The kernel: the world's rules, independent of gRPC. Each rule lives in one module:
artifacts (the object model), ledger (scrip), resources (flow buckets and stocks),
contracts (access), events (history), kernel (the verbs that combine them)."""
