"""The leaf of the program: names, identities, policy builders and helpers every layer shares.
Nothing here imports from another package of `components`."""
