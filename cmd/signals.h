/* SIGINT/SIGTERM cancel long jobs cleanly: the handler only sets a flag
 * that the copy engine polls between requests. */
#ifndef IMGTOOL_SIGNALS_H
#define IMGTOOL_SIGNALS_H

#include <signal.h>

extern volatile sig_atomic_t cancel_requested;
void install_cancel_handlers(void);

#endif
