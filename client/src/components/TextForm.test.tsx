// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, errorFromResponse } from '../api';
import { TextForm } from './TextForm';

afterEach(cleanup);

function renderForm(onSubmit: (value: string) => Promise<void>) {
  render(
    <TextForm field="title" label="Title" submitLabel="Create post" busyLabel="Creating…" max={200} onSubmit={onSubmit} />,
  );
  return screen.getByLabelText('Title') as HTMLInputElement;
}

describe('TextForm', () => {
  it("shows the server's validation message next to the field it names", async () => {
    const body = '{"error":{"code":"validation_failed","message":"title must be 1 to 200 characters after trimming (got 0)","field":"title"}}';
    const input = renderForm(async () => {
      throw errorFromResponse(422, body);
    });
    fireEvent.change(input, { target: { value: '   ' } });
    fireEvent.submit(input.form!);

    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toBe('title must be 1 to 200 characters after trimming (got 0)');
    expect(input.getAttribute('aria-invalid')).toBe('true');
    expect(input.getAttribute('aria-describedby')?.split(' ')).toContain(alert.id);
    // The value stays for fixing; typing clears the error.
    expect(input.value).toBe('   ');
    fireEvent.change(input, { target: { value: 'Fixed' } });
    expect(screen.queryByRole('alert')).toBeNull();
    expect(input.getAttribute('aria-invalid')).toBeNull();
  });

  it('shows an error that names no field under the form, without marking the input', async () => {
    const input = renderForm(async () => {
      throw new ApiError(503, 'unavailable', 'the database is unavailable');
    });
    fireEvent.change(input, { target: { value: 'Hello' } });
    fireEvent.click(screen.getByRole('button', { name: 'Create post' }));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toBe('the database is unavailable');
    expect(alert.classList.contains('form-error')).toBe(true);
    expect(input.getAttribute('aria-invalid')).toBeNull();
  });

  it('submits the value, shows it is busy, then clears the input and keeps focus', async () => {
    let finish!: () => void;
    const onSubmit = vi.fn(() => new Promise<void>((resolve) => (finish = resolve)));
    const input = renderForm(onSubmit);
    fireEvent.change(input, { target: { value: 'Hello world' } });
    expect(screen.getByText('11/200')).toBeTruthy();
    fireEvent.submit(input.form!);
    expect(onSubmit).toHaveBeenCalledWith('Hello world');
    const button = screen.getByRole('button', { name: 'Creating…' }) as HTMLButtonElement;
    expect(button.disabled).toBe(true);
    finish();
    await waitFor(() => expect(input.value).toBe(''));
    expect(document.activeElement).toBe(input);
    expect((screen.getByRole('button', { name: 'Create post' }) as HTMLButtonElement).disabled).toBe(false);
  });
});
