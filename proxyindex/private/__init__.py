"""The private side: packages on disk (the packages folder and what it lists), removed-name
tombstones, and the checks a published sdist must pass.
"""
