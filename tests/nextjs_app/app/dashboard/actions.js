'use server';

import { auth } from '@clerk/nextjs/server';

// Server action: echoes the userId Clerk saw for the POST that invoked it.
export async function echoUser(_prevState, formData) {
  const { userId } = await auth();
  return {
    userId: userId ?? 'signed-out',
    note: String(formData?.get?.('note') ?? ''),
  };
}
