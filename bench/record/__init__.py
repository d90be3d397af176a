"""Issue 10's record rows: the service's own search (default space, no search_space) on a zoo
model, through the HTTP API, judged on the test split."""
