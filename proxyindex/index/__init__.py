"""The merged index: one project's page (private and upstream merged by the policy) and the
root list of every project.
"""
