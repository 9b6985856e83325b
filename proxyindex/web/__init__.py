"""The HTTP server: the app and its route table, the views, the upload endpoint, the response
classes, the listening sockets, worker processes and logs.
"""
