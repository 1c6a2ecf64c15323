'use client';

import { useActionState } from 'react';
import { echoUser } from './actions';

export default function EchoForm() {
  // Works with JS (fetch with a Next-Action header, RSC answer) and without JS (a plain
  // multipart form POST to /dashboard, HTML answer with the state rendered below).
  const [state, formAction] = useActionState(echoUser, null, '/dashboard');
  return (
    <form action={formAction}>
      <input type="hidden" name="note" value="echo" />
      <button type="submit">echo</button>
      <p id="action-result">{state ? state.userId : 'none'}</p>
    </form>
  );
}
