"""Fleet control plane: sites, policies, rollouts, agent sessions, status page.

Not built yet: see the controller issue.
"""
