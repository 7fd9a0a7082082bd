"""Where a fluid block type's documentation link points: a section of fluid's README.

Prefect shows the link on the block type's catalog page and form. It must be an absolute URL
(Prefect validates it as one), so it is the README on the repository's web page plus the
section's GitHub-style anchor (lower case, punctuation dropped, spaces as '-').
"""

# Not yet a published address: fluid has no public repository yet. Change this one line when
# it has; the catalog test reads the link from here, not a copy.
README_URL = "https://github.com/fluid-infra/fluid/blob/main/README.md"


def docs_url(anchor: str) -> str:
    """The README section `anchor` (e.g. "configuration") as an absolute URL."""
    return f"{README_URL}#{anchor}"
