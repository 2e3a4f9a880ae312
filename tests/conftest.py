"""Root of the test tree.

Being a conftest of the ``tests`` package, it puts the repository root on ``sys.path`` before any
test directory's own conftest runs, so that ``tests.servers`` (the one way to start and stop real
server processes) imports from every test directory, including those that are not packages.
"""
