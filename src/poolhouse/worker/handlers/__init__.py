"""Handlers: what a handler mapping selects to produce a response (static files, WSGI, ASGI, CGI, proxy)."""
