"""One module per kind of cluster; `Cluster` picks the implementation in one place."""
