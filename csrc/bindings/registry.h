// Every bind_<family>.cpp defines `void bind_<family>(pybind11::module_&)`; list the
// family here (one line each) and module.cpp registers it in both extensions.
#pragma once
#define ALEXNET_BINDING_FAMILIES(X) \
  X(core)                           \
  X(devices)                        \
  X(conv)                           \
  X(elementwise)                    \
  X(layers)                         \
  X(transfer)                       \
  X(selftest)
