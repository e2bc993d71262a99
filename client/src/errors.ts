import { ApiError } from './api';

export interface ShownError {
  /** Shown next to the form's field: the server named that field. */
  field?: string;
  /** Shown under the form: anything not about the field (404, 503, network…). */
  form?: string;
}

/** Where a failed submission's message goes in a form whose input is `field`. */
export function placeError(error: unknown, field: string): ShownError {
  if (error instanceof ApiError) {
    return error.field === field ? { field: error.message } : { form: error.message };
  }
  return { form: error instanceof Error ? error.message : 'Something went wrong; try again.' };
}
