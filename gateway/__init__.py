"""The HTTP gateway: the page, the JSON API, job submission and result tracking."""
