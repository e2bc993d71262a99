import { useId, useRef, useState, type FormEvent, type ReactNode } from 'react';
import { placeError, type ShownError } from '../errors';

export interface TextFormProps {
  /** The request field this input fills; server errors naming it show next to it. */
  field: string;
  label: ReactNode;
  submitLabel: string;
  busyLabel: string;
  max: number;
  placeholder?: string;
  className?: string;
  onSubmit(value: string): Promise<void>;
}

/**
 * A one-field form: submit with Enter or the button; the input is cleared and keeps focus
 * on success; the server's message appears next to the field (or under the form) on failure.
 */
export function TextForm(props: TextFormProps) {
  const { field, label, submitLabel, busyLabel, max, placeholder, className, onSubmit } = props;
  const id = useId();
  const inputId = `${id}-${field}`;
  const errorId = `${id}-error`;
  const counterId = `${id}-counter`;
  const input = useRef<HTMLInputElement>(null);
  const [value, setValue] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ShownError>({});

  const length = [...value.trim()].length; // characters, as the server counts them
  const over = length > max;

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (busy) return;
    setBusy(true);
    setError({});
    try {
      await onSubmit(value);
      setValue('');
      input.current?.focus();
    } catch (failure) {
      setError(placeError(failure, field));
      input.current?.focus();
    } finally {
      setBusy(false);
    }
  };

  const describedBy = [counterId, error.field ? errorId : null].filter(Boolean).join(' ');

  return (
    <form className={`text-form ${className ?? ''}`} onSubmit={submit} noValidate aria-busy={busy}>
      <label className="text-form__label" htmlFor={inputId}>
        {label}
      </label>
      <div className="text-form__row">
        <div className="text-form__field">
          <input
            ref={input}
            id={inputId}
            name={field}
            className="text-form__input"
            type="text"
            autoComplete="off"
            value={value}
            placeholder={placeholder}
            aria-invalid={error.field ? true : undefined}
            aria-describedby={describedBy}
            onChange={(event) => {
              setValue(event.target.value);
              if (error.field) setError({});
            }}
          />
          <div className="text-form__meta">
            {error.field ? (
              <p className="field-error" id={errorId} role="alert">
                {error.field}
              </p>
            ) : (
              <span />
            )}
            <span id={counterId} className={`counter${over ? ' counter--over' : ''}`}>
              <span className="sr-only">Characters used: </span>
              {length}/{max}
            </span>
          </div>
        </div>
        <button className="button" type="submit" disabled={busy}>
          {busy ? busyLabel : submitLabel}
        </button>
      </div>
      {error.form ? (
        <p className="form-error" role="alert">
          {error.form}
        </p>
      ) : null}
    </form>
  );
}
