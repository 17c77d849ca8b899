/* lazylayer-erofsd - the supervisor of an EROFS mount filled on demand, as a
 * program of its own (ll_erofs_exec starts it; lazylayer.h, "EROFS supervisor").
 * Built from erofsd.c alone, with no other library than libc. */
#include "lazylayer.h"

int main(int argc, char **argv) { return ll_erofs_supervisor_main(argc, argv); }
