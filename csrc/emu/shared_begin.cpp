// Static __shared__ variables in the emu build are function-local `static __thread`
// objects (one copy per OS thread, and an OS thread runs one block at a time). To fill
// them with NaN bytes before every block, the build links this file immediately before
// the kernel objects and shared_end.cpp immediately after them: the linker lays out
// thread-local storage in link order, so every kernel's shared variables lie between
// the two markers. Kernel sources hold no other thread-local variables.
__thread char alexnet_emu_shared_begin;
