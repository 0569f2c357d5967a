"""The evaluate module script lives beside this file; see the parent package."""
