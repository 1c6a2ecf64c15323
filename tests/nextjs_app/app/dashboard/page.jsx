import { auth } from '@clerk/nextjs/server';
import EchoForm from './echo-form';

export default async function Dashboard() {
  const { userId, sessionId } = await auth();
  return (
    <main>
      <h1 id="page">dashboard</h1>
      <p id="user">{userId ?? 'signed-out'}</p>
      <p id="session">{sessionId ?? 'none'}</p>
      <EchoForm />
    </main>
  );
}
