"""What a mechanism author needs: the hooks and their JSON shapes, the SDK, the library.

- `interface`: the hooks a mechanism may define; `wire`: the JSON shapes as types;
- `sdk`: helpers mechanism code may import (shipped into the sandbox);
- `library`: the built-in mechanisms, loaded like generated ones.

The controller's side - the sandboxed hosts that call the hooks, the gates a mechanism
passes, its contract test and the records of its calls - is `controller.research.level2`.
"""
