"""Document sources: each lists what changed since a cursor and fetches document bytes."""
