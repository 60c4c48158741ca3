/* SIGINT/SIGTERM cancel long jobs cleanly: the handler only sets a flag
 * that the copy engine polls between requests (from worker threads too,
 * hence a C11 atomic; ATOMIC_INT_LOCK_FREE makes the store signal-safe). */
#ifndef IMGTOOL_SIGNALS_H
#define IMGTOOL_SIGNALS_H

#include <signal.h>
#include <stdatomic.h>

extern atomic_int cancel_requested;
void install_cancel_handlers(void);

#endif
