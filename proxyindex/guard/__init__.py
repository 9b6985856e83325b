"""Supply-chain guard: rules that hold back, refuse or yank UPSTREAM files (issue 14).

Not to be confused with ``proxyindex.policy``, which decides who OWNS a name (private or
upstream: dependency confusion) and always comes first. The guard only ever looks at files
of the upstream (private files are never held back; a snapshot hides private files uploaded
after its time), so no rule here can make a private name fall through to an upstream.

- ``rules``: durations, snapshot times, and name rules (names, ``prefix-*`` patterns, PEP 440
  requirement strings) indexed by project name, so matching is one dict lookup per page;
- ``advisories``: OSV records (the OSV PyPI export, GitHub's advisory database) indexed the
  same way;
- ``decide``: the pure function from a page, the rules and a time to the visible page, one
  reason per hidden, refused or yanked file, and when that answer changes by time alone;
- ``live``: the rules as the server holds them, reloaded when their files change, with a memo
  of recent outcomes and one log line per decision.
"""
