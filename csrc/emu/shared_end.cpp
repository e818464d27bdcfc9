// See shared_begin.cpp: linked right after the last kernel object.
__thread char alexnet_emu_shared_end;
