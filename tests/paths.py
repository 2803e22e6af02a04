"""Where the tests' data lives: committed fixtures and the shared/ folder."""

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
FIXTURES_DIR = TESTS_DIR / "fixtures"
# The project's shared folder sits beside the checkout (it is not part of the
# repository); tests that read published data from it skip when it is absent.
SHARED_DIR = REPO_DIR.parent / "shared"
