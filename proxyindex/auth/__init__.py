"""Who is asking and may they: htpasswd users, upload tokens, the authenticator behind
every route.
"""
