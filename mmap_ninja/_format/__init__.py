"""What each kind of map is on disk, apart from the objects users hold.

- ``verify``: reports of damage (``Report``) and the checks every kind shares.
- ``build``: whole maps built aside and swapped in (``building``, ``build_aside``).
- ``ragged``, ``strings``, ``numpy``: the files of each plain kind, their write batches, their
  checks and how maps of the kind are concatenated.
- ``kinds``: the one registry of kinds (``KINDS``, ``register``), which the map classes fill in
  with how they open and build.
- ``sharded``: the manifest of a sharded map, its versions and its parts' names.

Nothing here imports a module of map objects; the map objects import from here.
"""
