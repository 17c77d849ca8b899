/* toc.c - (being written) */
#include "internal.h"
